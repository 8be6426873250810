//! The sequencer: unique, increasing IDs from counter registers in the quorum store.
//!
//! A sequence `NAME` is the register `seq/NAME` holding the next free ID (absent = 1). An
//! allocation of `n` IDs is the change `x -> x + n`, which returns `[x, x + n)`; CASPaxos makes
//! the change linearizable, so two allocations never overlap whatever their sizes (unlike
//! rr_seq's read-max-then-set). Buffered requests are served from a per-sidecar
//! [`buffer::RangeBuffer`]; strict ones allocate directly, so their IDs follow real time.
//!
//! Every request of one sequence on this sidecar, buffered, strict or larger than the buffer,
//! goes through that sequence's [`buffer::RangeBuffer`], which keeps the per-sidecar order:
//! every range returned starts above every ID returned before (see its docs for the argument).

pub mod buffer;

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::quorum::proposer::Proposer;
use crate::quorum::register::{RegisterError, Registers};
use crate::quorum::transport::Peers;
use crate::validate::{validate_name, NameError};
use buffer::RangeBuffer;

/// First ID of every sequence.
pub const FIRST_ID: u64 = 1;

/// Why a sequencer request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeqError {
    /// Bad sequence name.
    #[error("invalid sequence name: {0}")]
    InvalidName(#[from] NameError),
    /// Count 0 or above the limit.
    #[error("count must be between 1 and {max}, got {got}")]
    InvalidCount {
        /// Requested.
        got: u64,
        /// Configured maximum.
        max: u64,
    },
    /// `Current` of a sequence nobody allocated from.
    #[error("sequence {0:?} does not exist (no ID was ever allocated from it)")]
    NotFound(String),
    /// The quorum did not answer in time, or the register cannot be used.
    #[error(transparent)]
    Quorum(#[from] RegisterError),
    /// The request's deadline passed while it waited for this sidecar's own work (a buffer
    /// refill, or a direct range above what the sidecar already returned).
    #[error("{0}")]
    Timeout(String),
}

/// Settings of the sequencer.
#[derive(Debug, Clone)]
pub struct SequencerConfig {
    /// Default range size of a buffer refill.
    pub range_size: u64,
    /// Range size per sequence.
    pub range_overrides: BTreeMap<String, u64>,
    /// Largest count of one request.
    pub max_count: u64,
    /// Quorum allocations per sequence in flight at once (see [`buffer`]).
    pub allocations_in_flight: usize,
    /// Deadline of one request.
    pub timeout: Duration,
}

/// Allocates ranges from sequence registers through the quorum.
pub struct RangeAllocator<P: Peers> {
    registers: Registers<P>,
    timeout: Duration,
}

impl<P: Peers> Clone for RangeAllocator<P> {
    fn clone(&self) -> Self {
        Self { registers: self.registers.clone(), timeout: self.timeout }
    }
}

fn key(name: &str) -> String {
    format!("seq/{name}")
}

impl<P: Peers> buffer::Allocate for RangeAllocator<P> {
    /// Allocates `n` contiguous IDs at or above `floor` through a quorum round that ends by
    /// `deadline` (IDs skipped below `floor` are a gap, never reused).
    async fn allocate_by(&self, name: &str, n: u64, floor: u64, deadline: Instant) -> Result<Range<u64>, SeqError> {
        Ok(self.registers.add(&key(name), n, floor.max(FIRST_ID), deadline).await?)
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl<P: Peers> RangeAllocator<P> {
    /// The next ID the quorum would hand out (linearizable read).
    pub async fn current(&self, name: &str) -> Result<u64, SeqError> {
        self.registers.counter(&key(name)).await?.ok_or_else(|| SeqError::NotFound(name.to_string()))
    }
}

/// The app-facing sequencer of one sidecar.
pub struct Sequencer<P: Peers> {
    allocator: RangeAllocator<P>,
    config: SequencerConfig,
    buffers: Mutex<HashMap<String, Arc<RangeBuffer<RangeAllocator<P>>>>>,
    metrics: Arc<Metrics>,
}

impl<P: Peers> Sequencer<P> {
    /// A sequencer proposing through `proposer`.
    pub fn new(proposer: Proposer<P>, config: SequencerConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            allocator: RangeAllocator { registers: Registers::new(proposer, config.timeout), timeout: config.timeout },
            config,
            buffers: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Validates a sequence name and a count.
    pub fn validate(&self, name: &str, count: u64) -> Result<(), SeqError> {
        validate_name(name)?;
        if count == 0 || count > self.config.max_count {
            return Err(SeqError::InvalidCount { got: count, max: self.config.max_count });
        }
        Ok(())
    }

    /// Range size of a sequence's buffer.
    pub fn range_size(&self, name: &str) -> u64 {
        self.config.range_overrides.get(name).copied().unwrap_or(self.config.range_size)
    }

    /// `count` contiguous IDs: from the buffer, or through the quorum when `strict`.
    pub async fn next(&self, name: &str, count: u64, strict: bool) -> Result<Range<u64>, SeqError> {
        self.validate(name, count)?;
        let r = if strict {
            self.buffer(name).direct(count, Instant::now() + self.config.timeout).await?
        } else {
            // Waiting for a refill in flight plus a refill of our own must still end in time.
            match tokio::time::timeout(self.config.timeout, self.buffer(name).take(count)).await {
                Ok(r) => r?,
                Err(_) => {
                    let timeout = self.config.timeout;
                    return Err(SeqError::Timeout(format!(
                        "no buffer refill of {name:?} completed within {timeout:?}"
                    )));
                }
            }
        };
        self.metrics.ids_issued.inc_by(r.end - r.start);
        Ok(r)
    }

    /// The next ID the quorum would hand out.
    pub async fn current(&self, name: &str) -> Result<u64, SeqError> {
        validate_name(name)?;
        self.allocator.current(name).await
    }

    fn buffer(&self, name: &str) -> Arc<RangeBuffer<RangeAllocator<P>>> {
        let mut buffers = self.buffers.lock().expect("buffers lock");
        buffers
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(RangeBuffer::new(
                    name.to_string(),
                    self.range_size(name),
                    self.config.allocations_in_flight,
                    self.allocator.clone(),
                    self.metrics.clone(),
                ))
            })
            .clone()
    }
}
