//! Log streams: named, ordered, replicated logs with dense LSNs (1, 2, 3, ...), appended to
//! through one primary per stream and replicated to `replication_factor` members.
//!
//! Layout: [`segment`] (one stream's CRC-framed segment files on one replica), [`store`] (the
//! replica rules and the group-committing writer), [`producer`] (idempotent producers),
//! [`history`] (what trimmed entries said of producers and fences), [`primary`] (epoch, seal,
//! recovery, pipelined replication, ack quorum), [`router`] (stream
//! metadata in registers, who is primary, forwarding from any sidecar), [`placement`] (which
//! members hold a stream), [`retention`] (how far a primary trims on its own), [`metrics`].
//! gRPC adapters: `api::app::log` and `api::log_peer`.
//!
//! # Protocol
//!
//! Each stream has two registers in the quorum store: `log/<name>/meta` (replication factor
//! RF, ack quorum AQ, the replicas, the trim point) and `log/<name>/epoch` (the primary's id).
//! A primary's **epoch** is the version of the epoch register its compare-and-set wrote: the
//! register API makes versions strictly increasing and every CAS linearizable, so two primaries
//! never share an epoch and a later takeover always has a higher one.
//!
//! Every entry on a replica carries the epoch of the primary that wrote that copy. A replica
//! keeps a durable **sealed epoch** and refuses any write (and any recovery read) from a lower
//! epoch.
//!
//! A new primary with epoch `E` (**recovery**, [`primary`]):
//! 1. seals every replica at `E` (waiting for each up to its deadline) and needs at least
//!    `RF - AQ + 1` complete (not rebuilding) ones, itself included: they meet every ack quorum;
//! 2. takes the log of the sealed replica whose last entry has the highest (epoch, LSN) as the
//!    stream's log (Raft's "most up-to-date log"), copies what it lacks of it with fencing reads
//!    (a read carries `E` and seals too), then rewrites the entries from the shortest sealed
//!    replica's last LSN to the end under epoch `E` (re-replication: they become entries of
//!    `E`, acknowledged like new ones);
//! 3. replicates to every replica; once the recovered tail is committed under `E` (so the
//!    committed LSN never reads lower than what earlier primaries acknowledged) it continues at
//!    the next LSN.
//!
//! Replication is Raft's log matching: a primary sends entries with the (LSN, epoch) of the
//! entry before them; a replica accepts only when it holds that entry, cuts a conflicting
//! suffix (one that no ack quorum of a later epoch can hold), and answers after the entries are
//! on disk. An entry of epoch `E` at LSN `x` is **committed**, and its batch acknowledged, once
//! AQ replicas (the primary's own disk counting as one) answered durably up to `x`; everything
//! before it is committed with it. Replicas `fdatasync` before answering, and one writer thread
//! per member groups the fsyncs of all streams and batches that arrive while the disk is busy
//! (one `fdatasync` per touched segment, the segments' side by side on sync threads, while the
//! writer applies the next group).
//!
//! # Guarantees, why they hold, and the tests that catch their violation
//!
//! - **No acknowledged entry is lost.** An acknowledged entry is on AQ replicas' disks
//!   (fsync before the answer, [`store`]). A later primary seals `RF - AQ + 1` replicas, so at
//!   least one sealed replica holds it, and a replica answers the seal only after the writes it
//!   acknowledged (one writer applies operations in order). The chosen log is at least as
//!   up-to-date as that replica's; by the log-matching induction (every primary since holds all
//!   committed entries, because each one's recovery made the same choice) it contains the entry.
//!   A torn tail on restart is cut only past the last record that passes its CRC, which is past
//!   anything acknowledged. Tests: `store::tests::replicas_refuse_older_epochs_and_cut_conflicting_suffixes`,
//!   `segment::tests::a_torn_or_corrupt_tail_is_cut_and_the_rest_kept`,
//!   `primary::tests::recovery_keeps_every_acknowledged_entry` (verified to fail when recovery
//!   keeps its own log instead of the most up-to-date one),
//!   and the checker of `e2e/tests/log.rs`: `kill -9` of the primary mid-pipeline, kill all and
//!   restart, and `a_lagging_replica_that_takes_over_recovers_every_acknowledged_entry`
//!   (verified to fail, losing LSN 1, when recovery keeps the new primary's own lagging log).
//! - **None duplicated, LSNs dense, order kept.** Only the primary of the highest epoch can get
//!   entries acknowledged, it assigns LSNs consecutively in the order batches arrive on its
//!   queue, and an appender's batches reach that queue in the order it sent them (one stream,
//!   results in request order). Retries are deduplicated (next point). Tests: the checker of
//!   `e2e/tests/log.rs` reads the whole stream back and compares it with every acknowledged
//!   append (verified to report a duplicate when the producer check is disabled).
//! - **A deposed primary gets nothing acknowledged after a seal.** Its writes carry its old
//!   epoch; every sealed replica refuses them, and any AQ replicas include a sealed one, so it
//!   can never count AQ durable answers again; it steps down on the first refusal. Tests:
//!   `primary::tests::a_deposed_primary_gets_nothing_acknowledged` (verified to fail when
//!   replicas accept older epochs), and with real processes behind a partition
//!   `e2e/tests/log.rs::a_deposed_primary_gets_no_append_acknowledged_after_a_new_epoch_is_sealed`.
//! - **A wiped replica is rebuilt before it counts.** A replica that finds a stream missing
//!   (its disk was wiped, or it never received the stream) marks it *rebuilding* (durably),
//!   unless the seal says the stream is new (its epoch register was just created, so no entry
//!   exists anywhere). A rebuilding replica's seal answer does not count toward the
//!   `RF - AQ + 1` a recovery needs; it counts again once it holds the primary's log through a
//!   commit point that covers the recovered tail (every entry earlier epochs acknowledged).
//!   Until then a stream whose only other replicas are down stays unavailable rather than
//!   recovering an empty log. Tests: `primary::tests::a_wiped_replica_does_not_count_until_it_is_rebuilt`
//!   (verified to fail when rebuilding replicas are counted), `e2e/tests/log.rs`
//!   (`a_wiped_replica_is_rebuilt_and_then_carries_a_takeover`).
//! - **Idempotent retries.** A batch carries (producer id, producer epoch, batch sequence); the
//!   primary keeps the last [`producer::KEPT_BATCHES`] batches of each producer, rebuilt from
//!   the log itself after a takeover (entries store their producer fields), and answers a
//!   retried batch with its original LSNs; a gap or an older producer epoch is refused.
//!   Tests: `producer::tests`, `primary::tests::a_retried_batch_is_written_once_across_a_takeover`,
//!   and in `e2e/tests/log.rs` the resend of batch 59 after `kill -9` of every member and the
//!   appenders that resend every unacknowledged batch after a primary's `kill -9`.
//!
//! # Trimming
//!
//! The trim point `F` (first available LSN) is stored in the metadata register before anything
//! is deleted, so it is durable and every later primary starts with it (it reads the register
//! before recovering). `F` is at most the committed LSN + 1, so every entry of the log below
//! `F` is committed. Replicas learn `F` from every replication message (an empty one when only
//! `F` moved, and on every new link) and from the recovery seal, and delete their segment files
//! whose entries all lie below `F`, never the active one. A replica's **base** `B` (its entries
//! up to `B` are gone) is written durably, with `B`'s epoch, before any file is deleted, so log
//! matching still works at `B` and a restart finds the files it expects. Every base is below
//! `F`.
//!
//! A replica that cannot take the primary's next entries because they are below what the
//! primary still holds, or because it diverged below its own base, is **reset**: the primary
//! sends its log from `R = F - 1` (or its own base, or the last entry but one, whichever keeps
//! it sendable) with a flag, and a replica that does not hold `(R, epoch)` drops its whole log
//! and continues after `R`. **Why nothing acknowledged is lost**: a replica that does not hold
//! the primary's entry at `R` holds no entry matching the primary's log above `R` (log
//! matching), so what it drops is either below `F` (trimmed) or conflicts with the primary's
//! log (which holds every committed entry), so was never acknowledged. A replica that holds
//! `(R, epoch)` is not reset. Recovery resets the new primary's own log to the chosen log's
//! base by the same argument when it cannot copy from below it.
//!
//! Tests: `segment::trim_tests` (files below go, the base survives a reopen: verified to fail,
//! losing the whole log on reopen, without the durable base), `store::tests::writes_and_seals_carry_the_trim_point_and_a_reset_replaces_a_lagging_log`,
//! `primary::tests::a_lagging_replica_is_rebuilt_from_the_trim_point_of_a_trimmed_primary`
//! (verified to fail without the reset), and with real processes
//! `e2e/tests/log.rs::trim_reclaims_disk_on_every_replica_and_survives_a_restart` (disk per
//! replica 25.2 MB -> 8.4 MB, a replica that was down learns the trim point, the first LSN
//! survives `kill -9` of every member; verified to fail when replicas delete nothing and when
//! the base is not durable) and `retention_by_bytes_keeps_disk_bounded_while_appending`
//! (retention semantics: [`retention`]).
//!
//! # Membership changes
//!
//! A stream's replicas are chosen when it is created; during the joint epoch of a membership
//! change, every stream with a replica on a leaving member moves to members that stay before
//! the epoch counts as migrated (so before the leaving members go). The new replica set is
//! written into the epoch register by the same compare-and-set that ends the old primary's
//! epoch, and every later takeover carries it. Protocol, argument and tests:
//! [`router::relocate`](crate::log::router).
//!
//! Once the change is done, existing streams **rebalance** onto members that joined: one
//! driver (the lowest-id member, while it sees every member up) plans the fewest replica moves that bring every
//! member within one replica of the mean and runs them, a bounded number at once
//! (`--streams-rebalance-moves`, 0: off), each the same move. **Guarantee**: nothing
//! acknowledged is lost, nothing duplicated, LSNs stay dense through a rebalance, since each
//! move is the relocate move (its argument holds for any target of `RF` current members) and
//! two moves of one stream are ordered by the compare-and-set of its epoch register (two
//! drivers at once are safe; one primary runs one move at a time). A move that races with the
//! next membership change is dropped before its write, or, when the write was under way, moved
//! off the leaving member by the next pass (no entry lost when `AQ >= 2`). Plan, driver and tests:
//! [`router::rebalance`](crate::log::router::plan_rebalance).
//!
//! # Not built yet
//! - A trim stores what its trimmed entries said of producers and fences ([`history`]) only up
//!   to 512 KiB; beyond that, or when storing it failed, later primaries treat producers whose
//!   entries were trimmed as unknown.

pub mod fence;
pub mod history;
pub mod metrics;
pub mod placement;
pub mod primary;
pub mod producer;
pub mod retention;
pub mod router;

pub mod segment;
pub mod store;

/// One entry as replicas store it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogEntry {
    /// Its LSN.
    pub lsn: u64,
    /// Epoch of the primary that wrote this copy.
    pub epoch: u64,
    /// Producer id (0: not idempotent).
    pub producer_id: u64,
    /// Producer epoch.
    pub producer_epoch: u64,
    /// Batch sequence number of the producer.
    pub batch_seq: u64,
    /// Position in its batch.
    pub batch_index: u32,
    /// Entries in its batch.
    pub batch_len: u32,
    /// The batch's fencing precondition (on its first entry only).
    pub fence: Option<Fence>,
    /// The payload.
    pub data: Vec<u8>,
}

/// A fencing precondition: refused once a higher `token` for `(divider, key)` was appended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Fence {
    /// Divider name.
    pub divider: String,
    /// Key.
    pub key: String,
    /// Token (>= 1).
    pub token: u64,
}

/// Where an epoch's entries start in a replica's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochStart {
    /// The epoch.
    pub epoch: u64,
    /// Its first LSN.
    pub start_lsn: u64,
}

/// A batch as an appender sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Entries.
    pub entries: Vec<Vec<u8>>,
    /// Producer id (0: not idempotent).
    pub producer_id: u64,
    /// Producer epoch.
    pub producer_epoch: u64,
    /// Batch sequence number.
    pub batch_seq: u64,
    /// Fencing precondition.
    pub fence: Option<Fence>,
}

/// Why a log call failed; each variant maps to one gRPC code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The request is wrong (INVALID_ARGUMENT).
    #[error("{0}")]
    Invalid(String),
    /// No such stream (NOT_FOUND).
    #[error("stream {0:?} does not exist")]
    NotFound(String),
    /// The stream exists with other settings (ALREADY_EXISTS).
    #[error("{0}")]
    AlreadyExists(String),
    /// Below the trimmed point (OUT_OF_RANGE); names the first available LSN.
    #[error("LSN {requested} was trimmed; the first available LSN is {first}")]
    Trimmed {
        /// What was asked.
        requested: u64,
        /// First available LSN.
        first: u64,
    },
    /// Out of range as a primary elsewhere reported it (OUT_OF_RANGE), its message kept.
    #[error("{0}")]
    OutOfRange(String),
    /// Refused in this state (FAILED_PRECONDITION): a producer gap or fenced producer epoch.
    #[error("{0}")]
    Refused(String),
    /// A higher fencing token for the batch's key was already appended (FAILED_PRECONDITION,
    /// reason FENCED).
    #[error("{0}")]
    Fenced(String),
    /// Not available now; retrying may succeed (UNAVAILABLE).
    #[error("{0}")]
    Unavailable(String),
}

/// The LSNs of an appended batch, or why it was not appended.
pub type AppendResult = Result<Vec<u64>, LogError>;
/// Where a batch's result goes.
pub type AppendResultTx = tokio::sync::oneshot::Sender<AppendResult>;

/// Register key of a stream's metadata.
pub fn meta_key(stream: &str) -> String {
    format!("log/{stream}/meta")
}

/// Register key of a stream's [`history::History`] (what trimmed entries said).
pub fn history_key(stream: &str) -> String {
    format!("log/{stream}/history")
}

/// Register key of a stream's epoch (its version is the primary's epoch).
pub fn epoch_key(stream: &str) -> String {
    format!("log/{stream}/epoch")
}
