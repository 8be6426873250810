//! The log streams' Prometheus metrics (registered in the sidecar's registry by
//! [`crate::metrics::Metrics`], prefix `ordo_log_`).
//!
//! Label cardinality is bounded: no metric has a stream label (streams are created by apps at
//! run time, so their number is not bounded). Replica lag is reported as the sum and the maximum
//! over the streams this member replicates; trims carry a `cause` (`app` or `retention`),
//! recoveries a `result` (`ok` or `failed`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a recovery.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `failed`.
    pub result: String,
}

/// Labels of a trim.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabels {
    /// `app` (a Trim call) or `retention`.
    pub cause: String,
}

/// The log streams' metrics (cheap to clone: every field shares its values).
#[derive(Clone, Debug)]
pub struct LogMetrics {
    /// Entries a primary on this member appended (new batches, not retries).
    pub appended_entries: Counter,
    /// Payload bytes a primary on this member appended.
    pub appended_bytes: Counter,
    /// Entries per appended batch.
    pub batch_entries: Histogram,
    /// Batches of app Append streams on this sidecar read and not yet answered.
    pub batches_in_flight: Gauge,
    /// From a batch queued on this sidecar to its answer (acknowledged or failed).
    pub ack_seconds: Histogram,
    /// At a stream's primary, from a batch on its queue to its commit (ack quorum durable).
    pub primary_ack_seconds: Histogram,
    /// From a replication message sent by a primary to the replica's durable answer (the
    /// primary's own disk included).
    pub replicate_seconds: Histogram,
    /// From a write queued at this member's log store to its durable answer (the wait for the
    /// group commit before it, plus its own).
    pub write_seconds: Histogram,
    /// One group commit of this member's log store: writes and `fdatasync`s.
    pub commit_seconds: Histogram,
    /// The `fdatasync`s of one group commit (side by side).
    pub sync_seconds: Histogram,
    /// Segments `fdatasync`ed by one group commit.
    pub commit_segments: Histogram,
    /// Entries a primary read back from its store to replicate them (no longer in memory).
    pub replicated_from_store: Counter,
    /// Entries this member's replicas lack behind the commit point their primaries reported,
    /// summed over the streams it replicates.
    pub replica_lag_entries: Gauge,
    /// The largest lag of one stream this member replicates.
    pub replica_lag_max_entries: Gauge,
    /// Seals this member's replicas accepted (a new primary's epoch).
    pub seals: Counter,
    /// Streams this member's primaries moved to new replicas (off leaving members, by a
    /// rebalance, or by hand).
    pub moves: Counter,
    /// Replicas the rebalancer on this member (the driver) moved onto other members.
    pub rebalance_moves: Counter,
    /// Stream moves of the rebalancer on this member that failed (planned again).
    pub rebalance_failures: Counter,
    /// Replica moves the last plan of the rebalancer on this member asked for (0: balanced).
    pub rebalance_pending: Gauge,
    /// Reads this member's replica answered without the primary.
    pub replica_reads: Counter,
    /// Primaries started on this member, by result.
    pub recoveries: Family<ResultLabels, Counter>,
    /// Trim points moved by primaries on this member, by cause.
    pub trims: Family<CauseLabels, Counter>,
    /// Segment files this member deleted (trim, retention or a reset to a primary's log).
    pub segments_deleted: Counter,
    /// Bytes of the segment files this member deleted.
    pub deleted_bytes: Counter,
    lags: Arc<Mutex<HashMap<String, u64>>>,
}

impl Default for LogMetrics {
    /// Metrics registered nowhere (tests).
    fn default() -> Self {
        Self::register(&mut Registry::default())
    }
}

impl LogMetrics {
    /// Creates the metrics and registers them (prefix `log_`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            appended_entries: Counter::default(),
            appended_bytes: Counter::default(),
            batch_entries: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            batches_in_flight: Gauge::default(),
            ack_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 18)),
            primary_ack_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 18)),
            replicate_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 18)),
            write_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 18)),
            commit_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 18)),
            sync_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 18)),
            commit_segments: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            replicated_from_store: Counter::default(),
            replica_lag_entries: Gauge::default(),
            replica_lag_max_entries: Gauge::default(),
            seals: Counter::default(),
            moves: Counter::default(),
            rebalance_moves: Counter::default(),
            rebalance_failures: Counter::default(),
            rebalance_pending: Gauge::default(),
            replica_reads: Counter::default(),
            recoveries: Family::default(),
            trims: Family::default(),
            segments_deleted: Counter::default(),
            deleted_bytes: Counter::default(),
            lags: Arc::default(),
        };
        let r = registry;
        r.register("log_appended_entries", "Entries appended by primaries on this member", m.appended_entries.clone());
        r.register(
            "log_appended_bytes",
            "Payload bytes appended by primaries on this member",
            m.appended_bytes.clone(),
        );
        r.register("log_batch_entries", "Entries per appended batch", m.batch_entries.clone());
        r.register(
            "log_batches_in_flight",
            "Batches of app Append streams read and not yet answered (pipeline depth, all connections)",
            m.batches_in_flight.clone(),
        );
        r.register("log_ack_seconds", "From a batch queued on this sidecar to its answer", m.ack_seconds.clone());
        r.register(
            "log_primary_ack_seconds",
            "At a stream's primary, from a batch on its queue to its commit",
            m.primary_ack_seconds.clone(),
        );
        r.register(
            "log_replicate_seconds",
            "From a replication message sent by a primary to the replica's durable answer",
            m.replicate_seconds.clone(),
        );
        r.register(
            "log_write_seconds",
            "From a write queued at this member's log store to its durable answer",
            m.write_seconds.clone(),
        );
        r.register("log_commit_seconds", "One group commit of this member's log store", m.commit_seconds.clone());
        r.register("log_sync_seconds", "The fdatasyncs of one group commit", m.sync_seconds.clone());
        r.register("log_commit_segments", "Segments fdatasynced by one group commit", m.commit_segments.clone());
        r.register(
            "log_replicated_from_store",
            "Entries a primary read back from its store to replicate them",
            m.replicated_from_store.clone(),
        );
        r.register(
            "log_replica_lag_entries",
            "Entries this member's replicas lack behind their primaries' commit point, summed over streams",
            m.replica_lag_entries.clone(),
        );
        r.register(
            "log_replica_lag_max_entries",
            "Largest lag of one stream this member replicates",
            m.replica_lag_max_entries.clone(),
        );
        r.register(
            "log_replica_reads",
            "Reads answered by this member's replica without the primary",
            m.replica_reads.clone(),
        );
        r.register(
            "log_moves",
            "Streams whose primary on this member moved them to new replicas (off leaving members, rebalance, by hand)",
            m.moves.clone(),
        );
        r.register(
            "log_rebalance_moves",
            "Replicas the stream rebalancer on this member moved onto other members",
            m.rebalance_moves.clone(),
        );
        r.register(
            "log_rebalance_failures",
            "Stream moves of the rebalancer on this member that failed and are planned again",
            m.rebalance_failures.clone(),
        );
        r.register(
            "log_rebalance_pending",
            "Replica moves the last plan of the stream rebalancer on this member asked for",
            m.rebalance_pending.clone(),
        );
        r.register("log_seals", "Seals at a new epoch accepted by this member's replicas", m.seals.clone());
        r.register("log_recoveries", "Primaries started (recoveries) on this member, by result", m.recoveries.clone());
        r.register("log_trims", "Trim points moved by primaries on this member, by cause", m.trims.clone());
        r.register("log_segments_deleted", "Segment files deleted on this member", m.segments_deleted.clone());
        r.register("log_deleted_bytes", "Bytes of segment files deleted on this member", m.deleted_bytes.clone());
        m
    }

    /// Records the lag of this member's replica of `stream` (commit point minus durable LSN).
    pub fn replica_lag(&self, stream: &str, lag: u64) {
        let mut lags = self.lags.lock().expect("lags lock");
        match lags.get_mut(stream) {
            Some(l) => *l = lag,
            None => {
                lags.insert(stream.to_string(), lag);
            }
        }
        let sum: u64 = lags.values().sum();
        let max = lags.values().copied().max().unwrap_or(0);
        self.replica_lag_entries.set(i64::try_from(sum).unwrap_or(i64::MAX));
        self.replica_lag_max_entries.set(i64::try_from(max).unwrap_or(i64::MAX));
    }

    /// Counts a recovery.
    pub fn recovery(&self, ok: bool) {
        self.recoveries.get_or_create(&ResultLabels { result: if ok { "ok" } else { "failed" }.into() }).inc();
    }

    /// Counts a trim.
    pub fn trim(&self, cause: &str) {
        self.trims.get_or_create(&CauseLabels { cause: cause.into() }).inc();
    }
}
